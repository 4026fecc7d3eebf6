//! The kafka sink through the secured listeners of the test broker (`deploy/local/kafka.sh`:
//! SASL_SSL on PORT+2, mutual TLS on PORT+3, certificates from `deploy/local/certs.sh`): every
//! mechanism publishes and the record reads back byte for byte; wrong credentials answer 503,
//! say why in `/readyz`, and recover without a restart once the credential file is fixed; a
//! password rotated under load loses nothing; no secret reaches a log, an answer or
//! `check-config`; every compression codec works end to end. These tests fail, never skip, when
//! the broker is missing.
#![allow(clippy::unwrap_used)]

use crate::common;
use crate::kafka_support;
use crate::secure_support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::StatusCode;
use kafka_support::*;
use secure_support::*;

const READ_TIMEOUT: Duration = Duration::from_secs(20);
const SETTLE: Duration = Duration::from_millis(500);
/// A fixed credential file is noticed within 2 s (the file poll), then the new sink must be
/// healthy before it is swapped in.
const RECOVERY: Duration = Duration::from_secs(25);

/// A whole config with one kafka sink `events` at `brokers`, its `options` and `secret_options`
/// given as YAML lines, routing every event to `topic`.
fn config(brokers: &str, options: &[(&str, String)], secret_options: &[(&str, &Path)], topic: &str) -> String {
    let mut sink = format!("  events:\n    kind: kafka\n    brokers: \"{brokers}\"\n    options:\n");
    for (k, v) in options {
        sink.push_str(&format!("      {k}: \"{v}\"\n"));
    }
    if !secret_options.is_empty() {
        sink.push_str("    secret_options:\n");
        for (k, file) in secret_options {
            sink.push_str(&format!("      {k}: {{ file: \"{}\" }}\n", file.display()));
        }
    }
    yaml(&format!(
        "sinks:\n{sink}routes:\n  - match: \"*\"\n    to:\n      - {{ sink: events, topic: \"{topic}\" }}\n"
    ))
}

fn ca(dir: &Path) -> String {
    dir.join("ca.pem").display().to_string()
}

/// SASL_SSL options for `mechanism` as `username`, trusting the CA file `ca_file`.
fn sasl(mechanism: &str, username: &str, ca_file: &str) -> Vec<(&'static str, String)> {
    vec![
        ("security.protocol", "SASL_SSL".into()),
        ("sasl.mechanism", mechanism.into()),
        ("sasl.username", username.into()),
        ("ssl.ca.location", ca_file.into()),
    ]
}

/// mTLS options with the client certificate and key in `cert` and `key`.
fn mtls(ca_file: &str, cert: &Path, key: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("security.protocol", "SSL".into()),
        ("ssl.ca.location", ca_file.into()),
        ("ssl.certificate.location", cert.display().to_string()),
        ("ssl.key.location", key.display().to_string()),
    ]
}

/// Starts a bridge on `config`, posts one event, and checks it reads back byte for byte.
async fn round_trip(config: &str, topic: &str) {
    create_topic(topic, &[]).await;
    let bridge = spawn(config).await;
    wait_ready(bridge.admin_addr, Duration::from_secs(15)).await;
    assert_published(&bridge, topic, "secured").await;
    bridge.shutdown().await;
}

/// Posts a fresh event (200) and finds exactly it, byte for byte, on `topic`.
async fn assert_published(bridge: &hookbridge::app::Running, topic: &str, what: &str) {
    let id = unique_id(what);
    let body = stripe_event(&id, "invoice.paid", "in_1", None, false);
    let answer = post_signed(bridge.webhook_addr, body.clone()).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", text(&answer));
    let records = read_topic(topic, 1, READ_TIMEOUT, SETTLE);
    let found: Vec<_> = records.iter().filter(|r| r.event_id() == id).collect();
    assert_eq!(found.len(), 1, "{records:?}");
    assert_eq!(
        found[0].payload,
        body.to_vec(),
        "the payload is the body, byte for byte"
    );
}

fn secret_file(dir: &Path, name: &str, content: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_scram_sha_512() {
    require_broker(Duration::from_secs(10));
    let (certs, dir) = (certs(), tempfile::tempdir().unwrap());
    let pw = secret_file(dir.path(), "pw", KAFKA_SCRAM_PASSWORD);
    let topic = unique_topic("scram512");
    let options = sasl("SCRAM-SHA-512", KAFKA_SCRAM_USER, &ca(&certs));
    round_trip(
        &config(&sasl_ssl_brokers(), &options, &[("sasl.password", &pw)], &topic),
        &topic,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_scram_sha_256() {
    require_broker(Duration::from_secs(10));
    let (certs, dir) = (certs(), tempfile::tempdir().unwrap());
    let pw = secret_file(dir.path(), "pw", KAFKA_SCRAM_PASSWORD);
    let topic = unique_topic("scram256");
    let options = sasl("SCRAM-SHA-256", KAFKA_SCRAM_USER, &ca(&certs));
    round_trip(
        &config(&sasl_ssl_brokers(), &options, &[("sasl.password", &pw)], &topic),
        &topic,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_plain() {
    require_broker(Duration::from_secs(10));
    let (certs, dir) = (certs(), tempfile::tempdir().unwrap());
    let pw = secret_file(dir.path(), "pw", KAFKA_PLAIN_PASSWORD);
    let topic = unique_topic("plain");
    let options = sasl("PLAIN", KAFKA_PLAIN_USER, &ca(&certs));
    round_trip(
        &config(&sasl_ssl_brokers(), &options, &[("sasl.password", &pw)], &topic),
        &topic,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_oauthbearer() {
    require_broker(Duration::from_secs(10));
    let certs = certs();
    let topic = unique_topic("oauthbearer");
    // librdkafka's unsecured JWT (no signature), which the broker's test validator accepts.
    let options = vec![
        ("security.protocol", "SASL_SSL".to_string()),
        ("sasl.mechanism", "OAUTHBEARER".into()),
        ("ssl.ca.location", ca(&certs)),
        ("enable.sasl.oauthbearer.unsecure.jwt", "true".into()),
        ("sasl.oauthbearer.config", format!("principal={KAFKA_SCRAM_USER}")),
    ];
    round_trip(&config(&sasl_ssl_brokers(), &options, &[], &topic), &topic).await;
}

/// OAUTHBEARER with OIDC: librdkafka fetches the token from the token endpoint over HTTP (with
/// its built-in libcurl) using the client id and the secret from `secret_options`, and the broker
/// accepts it. The endpoint here is a local one that hands out an unsigned JWT for the test
/// user, which the broker's test validator accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_ssl_oauthbearer_with_a_token_from_an_oidc_endpoint() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    require_broker(Duration::from_secs(10));
    let (certs, dir) = (certs(), tempfile::tempdir().unwrap());
    let topic = unique_topic("oidc");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let jwt = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none"}"#),
        b64url(format!(r#"{{"sub":"{KAFKA_SCRAM_USER}","iat":{now},"exp":{}}}"#, now + 3600).as_bytes())
    );
    let reply = format!(r#"{{"access_token":"{jwt}","token_type":"bearer","expires_in":3600}}"#);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}/oauth2/token", listener.local_addr().unwrap());
    let requests = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = requests.clone();
    let server = tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 16384];
            let mut got = 0;
            // The request head and its short form body arrive together or in a few reads.
            while got < buf.len() {
                match tokio::time::timeout(Duration::from_millis(300), socket.read(&mut buf[got..])).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => got += n,
                }
                let text = String::from_utf8_lossy(&buf[..got]);
                if text.contains("\r\n\r\n") && text.contains("grant_type=") {
                    break;
                }
            }
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&buf[..got]).into_owned());
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                reply.len(),
                reply
            );
            let _ = socket.write_all(answer.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    let client_secret = secret_file(dir.path(), "client-secret", "hb-oidc-client-secret-7c21");
    let options = vec![
        ("security.protocol", "SASL_SSL".to_string()),
        ("sasl.mechanism", "OAUTHBEARER".into()),
        ("ssl.ca.location", ca(&certs)),
        ("sasl.oauthbearer.method", "oidc".into()),
        ("sasl.oauthbearer.client.id", "hookbridge-test".into()),
        ("sasl.oauthbearer.token.endpoint.url", endpoint.clone()),
    ];
    round_trip(
        &config(
            &sasl_ssl_brokers(),
            &options,
            &[("sasl.oauthbearer.client.secret", &client_secret)],
            &topic,
        ),
        &topic,
    )
    .await;
    server.abort();
    let requests = requests.lock().unwrap();
    let first = requests
        .first()
        .unwrap_or_else(|| panic!("nothing asked {endpoint} for a token"));
    assert!(first.starts_with("POST /oauth2/token"), "{first}");
    assert!(first.contains("grant_type=client_credentials"), "{first}");
    // The client id and secret go as HTTP basic authentication.
    assert!(first.to_ascii_lowercase().contains("authorization: basic "), "{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_with_a_client_certificate() {
    require_broker(Duration::from_secs(10));
    let certs = certs();
    let topic = unique_topic("mtls");
    let options = mtls(&ca(&certs), &certs.join("client.pem"), &certs.join("client.key"));
    round_trip(&config(&ssl_brokers(), &options, &[], &topic), &topic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_503_named_in_readyz_and_fixing_the_file_recovers() {
    require_broker(Duration::from_secs(10));
    let (certs, dir) = (certs(), tempfile::tempdir().unwrap());
    let pw = secret_file(dir.path(), "pw", "not-the-password");
    let topic = unique_topic("wrongpw");
    let options = sasl("SCRAM-SHA-512", KAFKA_SCRAM_USER, &ca(&certs));
    create_topic(&topic, &[]).await;
    let bridge = spawn(&config(
        &sasl_ssl_brokers(),
        &options,
        &[("sasl.password", &pw)],
        &topic,
    ))
    .await;
    let body = stripe_event(&unique_id("wrongpw"), "invoice.paid", "in_1", None, false);
    assert_unavailable(&bridge, "events", body, "authentication failed").await;

    replace(&pw, KAFKA_SCRAM_PASSWORD.as_bytes());
    wait_ready(bridge.admin_addr, RECOVERY).await;
    assert_eq!(sink_up(bridge.admin_addr, "events").await, Some(1.0));
    assert_published(&bridge, &topic, "fixedpw").await;
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_broker_certificate_is_503_named_in_readyz_and_fixing_the_ca_recovers() {
    require_broker(Duration::from_secs(10));
    let dir = tempfile::tempdir().unwrap();
    let pw = secret_file(dir.path(), "pw", KAFKA_SCRAM_PASSWORD);
    let ca_file = dir.path().join("ca.pem");
    install("other-ca.pem", &ca_file);
    let topic = unique_topic("untrusted");
    let options = sasl("SCRAM-SHA-512", KAFKA_SCRAM_USER, &ca_file.display().to_string());
    create_topic(&topic, &[]).await;
    let bridge = spawn(&config(
        &sasl_ssl_brokers(),
        &options,
        &[("sasl.password", &pw)],
        &topic,
    ))
    .await;
    let body = stripe_event(&unique_id("untrusted"), "invoice.paid", "in_1", None, false);
    assert_unavailable(&bridge, "events", body, "certificate not trusted").await;

    install("ca.pem", &ca_file);
    wait_ready(bridge.admin_addr, RECOVERY).await;
    assert_published(&bridge, &topic, "trusted").await;
    bridge.shutdown().await;
}

/// mTLS with a client certificate the broker refuses (`bad`), then the good one.
async fn refused_client_certificate_recovers(bad: &str) {
    require_broker(Duration::from_secs(10));
    let (certs, dir) = (certs(), tempfile::tempdir().unwrap());
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    install(&format!("{bad}.pem"), &cert);
    install(&format!("{bad}.key"), &key);
    let topic = unique_topic(bad);
    create_topic(&topic, &[]).await;
    let bridge = spawn(&config(&ssl_brokers(), &mtls(&ca(&certs), &cert, &key), &[], &topic)).await;
    let body = stripe_event(&unique_id(bad), "invoice.paid", "in_1", None, false);
    assert_unavailable(&bridge, "events", body, "client certificate refused by the broker").await;

    // A renewed certificate arrives as a new pair of files.
    install("client.key", &key);
    install("client.pem", &cert);
    wait_ready(bridge.admin_addr, RECOVERY).await;
    assert_published(&bridge, &topic, "renewed").await;
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_client_certificate_is_503_named_in_readyz_and_renewing_it_recovers() {
    refused_client_certificate_recovers("client-expired").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_503_named_in_readyz_and_replacing_it_recovers() {
    refused_client_certificate_recovers("client-other-ca").await;
}

/// The password of a SCRAM user is changed on the broker, then in the bridge's file, while
/// requests keep coming: every request is answered 200 (the old connection stays logged in until
/// the new one is healthy and swapped in), and every answered event is on the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scram_password_rotated_under_load_fails_no_request_and_loses_no_event() {
    require_broker(Duration::from_secs(10));
    let (certs, dir) = (certs(), tempfile::tempdir().unwrap());
    let user = format!("rotate-{}", std::process::id());
    let (old_pw, new_pw) = (format!("old-{}", unique_id("pw")), format!("new-{}", unique_id("pw")));
    kafka_sh(&["scram-user", &user, &old_pw]);
    let pw = secret_file(dir.path(), "pw", &old_pw);
    let topic = unique_topic("rotate");
    let options = sasl("SCRAM-SHA-512", &user, &ca(&certs));
    create_topic(&topic, &[]).await;
    let bridge = spawn(&config(
        &sasl_ssl_brokers(),
        &options,
        &[("sasl.password", &pw)],
        &topic,
    ))
    .await;
    wait_ready(bridge.admin_addr, Duration::from_secs(15)).await;
    let first_sink = bridge.state.live().sinks[0].clone();

    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (addr, stop) = (bridge.webhook_addr, stop.clone());
        load.push(tokio::spawn(async move {
            let mut answered = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let id = unique_id(&format!("load{worker}"));
                let body = stripe_event(&id, "invoice.paid", &format!("in_{n}"), None, false);
                let answer = post_signed(addr, body).await;
                answered.push((id, answer.status.as_u16(), text(&answer)));
                n += 1;
            }
            answered
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // As an operator would: the broker first, then the secret the bridge reads.
    kafka_sh(&["scram-user", &user, &new_pw]);
    replace(&pw, new_pw.as_bytes());
    let swapped_at = Instant::now();
    loop {
        if !Arc::ptr_eq(&bridge.state.live().sinks[0], &first_sink) {
            break;
        }
        assert!(
            swapped_at.elapsed() < RECOVERY,
            "the sink was not rebuilt with the new password"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let swap_took = swapped_at.elapsed();
    // Keep the load on past the old sink's grace period (ack_timeout + 1 s), so it is closed
    // while requests continue on the new one.
    tokio::time::sleep(Duration::from_secs(4)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut answered = Vec::new();
    for task in load {
        answered.extend(task.await.unwrap());
    }
    let failed: Vec<_> = answered.iter().filter(|(_, status, _)| *status != 200).collect();
    assert!(failed.is_empty(), "requests failed during the rotation: {failed:?}");
    let records = read_topic(&topic, answered.len(), READ_TIMEOUT, SETTLE);
    let on_topic = by_event_id(&records);
    let lost: Vec<_> = answered
        .iter()
        .filter(|(id, _, _)| !on_topic.contains_key(id))
        .collect();
    assert!(lost.is_empty(), "{} answered events are not on the topic", lost.len());
    eprintln!(
        "rotation: {} requests answered 200, new sink in use {swap_took:?} after the file changed",
        answered.len()
    );
    // A publish after the rotation goes through the new connection.
    assert_published(&bridge, &topic, "after").await;
    bridge.shutdown().await;
}

/// Passwords and secrets appear in no log line, no answer, no `/readyz` body and no
/// `check-config` output: the bridge runs as a process with a wrong SCRAM password from a file
/// and a PLAIN password and OAUTHBEARER client secret given as values, fails, is fixed, works.
#[test]
fn no_password_appears_in_logs_answers_or_check_config() {
    require_broker(Duration::from_secs(10));
    let (certs, dir) = (certs(), tempfile::tempdir().unwrap());
    let wrong = "hb-wrong-secret-5e0f";
    let pw = secret_file(dir.path(), "pw", wrong);
    let topic = unique_topic("nosecrets");
    let mut options = sasl("SCRAM-SHA-512", KAFKA_SCRAM_USER, &ca(&certs));
    options.push(("sasl.oauthbearer.client.secret", "hb-unused-oauth-secret-d41a".into()));
    // At debug level, so that more of what the bridge knows is written out.
    let config_text =
        config(&sasl_ssl_brokers(), &options, &[("sasl.password", &pw)], &topic) + "\nlog:\n  level: debug\n";
    let secrets = [wrong, KAFKA_SCRAM_PASSWORD, "hb-unused-oauth-secret-d41a", SECRET];

    check_config_shows_no_secret(dir.path(), &config_text, &secrets);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(create_topic(&topic, &[]));
    let mut served = serve_binary(dir.path(), &config_text);
    // Read the log while it is written: a full pipe would block the bridge.
    let log_reader = read_log(&mut served);
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], served.admin));
    let mut answers = String::new();
    rt.block_on(async {
        let body = stripe_event(&unique_id("nosecrets"), "invoice.paid", "in_1", None, false);
        let (answer, _) = timed_post(served.webhook_addr(), body).await;
        assert_eq!(answer.status.as_u16(), 503, "{}", text(&answer));
        answers.push_str(&text(&answer));
        tokio::time::sleep(Duration::from_secs(2)).await;
        answers.push_str(&text(&get(admin, "/readyz").await));
        replace(&pw, KAFKA_SCRAM_PASSWORD.as_bytes());
        wait_ready(admin, RECOVERY).await;
        let body = stripe_event(&unique_id("nosecrets"), "invoice.paid", "in_1", None, false);
        let (answer, _) = timed_post(served.webhook_addr(), body).await;
        assert_eq!(answer.status.as_u16(), 200, "{}", text(&answer));
        answers.push_str(&text(&get(admin, "/metrics").await));
    });
    served.child.kill().unwrap();
    let logs = log_reader.join().unwrap();
    assert!(
        logs.contains("authentication failed") || logs.contains("Authentication"),
        "{logs}"
    );
    assert!(logs.contains("credential files changed"), "{logs}");
    assert_no_secret("the bridge's log", &logs, &secrets);
    assert_no_secret("the answers", &answers, &secrets);
}

#[test]
fn check_config_refuses_gssapi_in_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    let options = vec![
        ("security.protocol", "SASL_SSL".to_string()),
        ("sasl.mechanism", "GSSAPI".into()),
        ("sasl.kerberos.service.name", "kafka".into()),
    ];
    std::fs::write(&path, config("kafka.example:9093", &options, &[], "t")).unwrap();
    let out = std::process::Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("sinks.events.options.sasl.mechanism") && lines[0].contains("GSSAPI"),
        "{err}"
    );
}

/// Each codec: the bridge compresses, the broker stores, the reader decompresses the same bytes.
async fn compressed_round_trip(codec: &str) {
    require_broker(Duration::from_secs(10));
    let topic = unique_topic(codec);
    let config = one_topic_config(&format!("    compression: {codec}\n"), &topic);
    create_topic(&topic, &[]).await;
    let bridge = spawn(&config).await;
    wait_ready(bridge.admin_addr, Duration::from_secs(15)).await;
    // A real-shaped, compressible body.
    let body = fixture_with_id("checkout.session.completed.json", &unique_id(codec));
    let answer = post_signed(bridge.webhook_addr, body.clone()).await;
    assert_eq!(answer.status, StatusCode::OK, "{codec}: {}", text(&answer));
    let records = read_topic(&topic, 1, READ_TIMEOUT, SETTLE);
    assert_eq!(records.len(), 1, "{codec}");
    assert_eq!(Bytes::from(records[0].payload.clone()), body, "{codec}: byte for byte");
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_gzip() {
    compressed_round_trip("gzip").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_snappy() {
    compressed_round_trip("snappy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_lz4() {
    compressed_round_trip("lz4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_zstd() {
    compressed_round_trip("zstd").await;
}
