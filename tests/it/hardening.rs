//! Operating behaviour: secret rotation without restart, SIGHUP reload, slow clients, the
//! concurrency cap, TLS, and the source allow-list.
#![allow(clippy::unwrap_used)]

use crate::common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use hookbridge::sink::memory::{Behaviour, MemorySink};
use hookbridge::sink::Sink;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ROUTE_ALL: &str =
    "sinks:\n  mem:\n    kind: discard\nroutes:\n  - match: \"*\"\n    to:\n      - { sink: mem, topic: t }\n";

/// Replaces a file the way Kubernetes updates a mounted Secret: write aside, then rename.
fn replace_file(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn post_with(addr: std::net::SocketAddr, secret: &str, id: &str) -> StatusCode {
    let body = event(id, "invoice.paid");
    let sig = sign(secret, &body);
    post_with_signature(addr, &sig, body).await.status
}

#[tokio::test]
async fn a_rotated_secret_file_is_used_without_restart_while_requests_keep_flowing() {
    let dir = tempfile::tempdir().unwrap();
    let current = dir.path().join("current");
    let previous = dir.path().join("previous");
    std::fs::write(&current, "whsec_old\n").unwrap();
    std::fs::write(&previous, "whsec_old\n").unwrap();
    let yaml = yaml(ROUTE_ALL).replace(
        &format!("      - value: {SECRET}"),
        &format!(
            "      - file: {}\n      - file: {}",
            current.display(),
            previous.display()
        ),
    );
    let mem = MemorySink::new("mem");
    let bridge = spawn_with(&yaml, vec![Arc::new(mem.clone()) as Arc<dyn Sink>]).await;
    let addr = bridge.webhook_addr;

    // Requests signed with the old secret keep flowing throughout the rotation.
    let flowing = tokio::spawn(async move {
        let mut statuses = Vec::new();
        for i in 0..60 {
            statuses.push(post_with(addr, "whsec_old", &format!("evt_flow{i}")).await);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        statuses
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(post_with(addr, "whsec_new", "evt_new0").await, StatusCode::BAD_REQUEST);
    // Rotation as the runbook says: the old secret moves to `previous`, the new one to `current`.
    replace_file(&current, "whsec_new\n");
    let started = Instant::now();
    let mut n = 1;
    loop {
        if post_with(addr, "whsec_new", &format!("evt_new{n}")).await == StatusCode::OK {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "the new secret was not picked up"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let statuses = flowing.await.unwrap();
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    // Once Stripe no longer signs with it, the old secret is removed from `previous`.
    replace_file(&previous, "whsec_new\n");
    let started = Instant::now();
    while post_with(addr, "whsec_old", &format!("evt_gone{}", started.elapsed().as_millis())).await == StatusCode::OK {
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "the old secret was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_secret_file_that_disappears_keeps_the_current_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let current = dir.path().join("current");
    std::fs::write(&current, SECRET).unwrap();
    let yaml = yaml(ROUTE_ALL).replace(
        &format!("      - value: {SECRET}"),
        &format!("      - file: {}", current.display()),
    );
    let bridge = spawn_with(&yaml, vec![Arc::new(MemorySink::new("mem")) as Arc<dyn Sink>]).await;
    std::fs::remove_file(&current).unwrap();
    tokio::time::sleep(hookbridge::app::FILE_POLL_INTERVAL + Duration::from_millis(500)).await;
    assert_eq!(
        post_with(bridge.webhook_addr, SECRET, "evt_still").await,
        StatusCode::OK
    );
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_slow_client_sending_headers_byte_by_byte_is_cut_off() {
    let yaml = format!("{}http:\n  header_read_timeout: 1s\n", yaml(ROUTE_ALL));
    let bridge = spawn_with(&yaml, vec![Arc::new(MemorySink::new("mem")) as Arc<dyn Sink>]).await;
    let mut s = tokio::net::TcpStream::connect(bridge.webhook_addr).await.unwrap();
    let started = Instant::now();
    let head = b"POST /webhooks/stripe HTTP/1.1\r\nhost: x\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
    let mut cut_off = None;
    for byte in head {
        if s.write_all(&[*byte]).await.is_err() {
            cut_off = Some(started.elapsed());
            break;
        }
        // A closed connection shows as EOF (or a 408) on read.
        let mut buf = [0u8; 256];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await {
            if n == 0 || buf.starts_with(b"HTTP/1.1 408") {
                cut_off = Some(started.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        if started.elapsed() > Duration::from_secs(10) {
            break;
        }
    }
    let after = cut_off.expect("the slow client was never cut off");
    assert!(after < Duration::from_secs(4), "cut off only after {after:?}");
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_body_that_never_arrives_is_answered_408() {
    let yaml = format!("{}http:\n  body_read_timeout: 500ms\n", yaml(ROUTE_ALL));
    let bridge = spawn_with(&yaml, vec![Arc::new(MemorySink::new("mem")) as Arc<dyn Sink>]).await;
    let mut s = tokio::net::TcpStream::connect(bridge.webhook_addr).await.unwrap();
    s.write_all(b"POST /webhooks/stripe HTTP/1.1\r\nhost: x\r\nstripe-signature: t=1,v1=00\r\ncontent-length: 100\r\n\r\n{\"id\"")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    bridge.shutdown().await;
}

/// Sends `head` (a request head without its closing CRLF) plus an empty line, and reads the
/// answer until the bridge closes the connection (a reset ends the answer too).
async fn raw_exchange(addr: std::net::SocketAddr, head: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(format!("{head}\r\n").as_bytes()).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "the connection was not closed after the answer");
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test]
async fn oversized_headers_are_refused_with_a_json_431() {
    // max_header_bytes is 16 KiB by default.
    let bridge = spawn_with(
        &yaml(ROUTE_ALL),
        vec![Arc::new(MemorySink::new("mem")) as Arc<dyn Sink>],
    )
    .await;
    let head = |filler: usize| {
        format!(
            "POST /webhooks/stripe HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nx-big: {}\r\n",
            "a".repeat(filler)
        )
    };
    // Just under the limit: the request is read and judged on its merits (no signature).
    let text = raw_exchange(bridge.webhook_addr, &(head(16 * 1024 - 200) + "connection: close\r\n")).await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");

    // Over it: a JSON 431 that closes the connection.
    let text = raw_exchange(bridge.webhook_addr, &head(20 * 1024)).await;
    assert!(text.starts_with("HTTP/1.1 431"), "{text}");
    assert!(text.to_ascii_lowercase().contains("connection: close"), "{text}");
    let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["error"], "headers_too_large", "{json}");
    assert_eq!(
        json["message"], "the request line and headers are larger than 16384 bytes",
        "{json}"
    );

    // Far over it: hyper stops reading at twice the limit and refuses with its own bare 431 (or
    // resets the connection while the client is still sending).
    let text = raw_exchange(bridge.webhook_addr, &head(256 * 1024)).await;
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 431"), "{text}");

    let metrics = String::from_utf8_lossy(&get(bridge.admin_addr, "/metrics").await.body).to_string();
    assert_eq!(
        metric(
            &metrics,
            "hookbridge_rejected_total{endpoint=\"/webhooks/stripe\",reason=\"headers_too_large\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    bridge.shutdown().await;
}

#[tokio::test]
async fn the_concurrency_cap_answers_503_to_a_burst() {
    let yaml = format!("{}http:\n  max_concurrent_requests: 4\n", yaml(ROUTE_ALL));
    let mem = MemorySink::new("mem");
    mem.set_behaviour(Behaviour::Delay(Duration::from_millis(800)));
    let bridge = spawn_with(&yaml, vec![Arc::new(mem.clone()) as Arc<dyn Sink>]).await;
    let addr = bridge.webhook_addr;
    let burst: Vec<_> = (0..20)
        .map(|i| tokio::spawn(async move { post_signed(addr, event(&format!("evt_burst{i}"), "invoice.paid")).await }))
        .collect();
    let mut ok = 0;
    let mut busy = 0;
    for task in burst {
        let a = task.await.unwrap();
        match a.status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(a.headers.contains_key("retry-after"));
                assert_eq!(a.error_code(), "unavailable");
                busy += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 4, "exactly the cap is served");
    assert_eq!(busy, 16);
    assert_eq!(mem.records().len(), 4);
    bridge.shutdown().await;
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Like `post_signed`, but a connection error is `None` instead of a panic.
async fn try_post(addr: std::net::SocketAddr, body: Bytes) -> Option<StatusCode> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    let req = http::Request::post(PATH)
        .header("host", "x")
        .header("stripe-signature", sign(SECRET, &body))
        .body(http_body_util::Full::new(body))
        .ok()?;
    Some(sender.send_request(req).await.ok()?.status())
}

#[tokio::test]
async fn memory_stays_bounded_under_a_burst_of_large_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let yaml_text = format!(
        "{}http:\n  max_concurrent_requests: 8\n",
        yaml("sinks:\n  slow:\n    kind: discard\n    delay: 1500ms\nroutes:\n  - match: \"*\"\n    to:\n      - { sink: slow, topic: t }\n")
    );
    let served = serve_binary(dir.path(), &yaml_text);
    let addr = served.webhook_addr();
    let before = vm_hwm_kib(served.child.id());
    // 200 clients each sending a ~1 MB signed event at once: without the cap, the bridge would
    // hold about 200 MB of bodies while the sink is slow.
    let pad = "x".repeat(1_000_000);
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let body = Bytes::from(format!(r#"{{"id":"evt_mem{i}","type":"invoice.paid","pad":"{pad}"}}"#));
            tokio::spawn(async move { try_post(addr, body).await })
        })
        .collect();
    let mut busy = 0;
    for t in tasks {
        // Refused at once: a 503, or the connection closed while the client was still sending
        // the body it was told not to send.
        if t.await.unwrap() != Some(StatusCode::OK) {
            busy += 1;
        }
    }
    let grown_mib = (vm_hwm_kib(served.child.id()).saturating_sub(before)) / 1024;
    drop(served);
    assert!(busy > 0, "the cap never answered 503");
    assert!(grown_mib < 64, "peak memory grew by {grown_mib} MiB");
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Opens a connection, declares a body of `declared` bytes, sends `sent` of them as fast as the
/// bridge reads, then stalls, keeping the connection open (the stream is returned).
async fn stalled_upload(addr: std::net::SocketAddr, declared: usize, sent: usize) -> Option<tokio::net::TcpStream> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let head = format!(
        "POST /webhooks/stripe HTTP/1.1\r\nhost: x\r\nstripe-signature: t=1,v1=00\r\ncontent-length: {declared}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.ok()?;
    let chunk = vec![b'x'; 64 * 1024];
    let mut left = sent;
    while left > 0 {
        let n = left.min(chunk.len());
        // The bridge stops reading an upload it has no room for: give up writing, keep the socket.
        match tokio::time::timeout(Duration::from_secs(3), s.write_all(&chunk[..n])).await {
            Ok(Ok(())) => left -= n,
            _ => break,
        }
    }
    Some(s)
}

/// Serves `yaml_text` in a bridge process, sends one event through it to warm up the request
/// path, and returns the process with its idle RSS in KiB.
async fn serve_warmed_up(dir: &Path, yaml_text: &str) -> (Served, u64) {
    let served = serve_binary(dir, yaml_text);
    assert_eq!(
        try_post(served.webhook_addr(), event("evt_warm", "invoice.paid")).await,
        Some(StatusCode::OK)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle_kib = vm_rss_kib(served.child.id());
    (served, idle_kib)
}

/// The README's bound: RSS stays under the idle RSS + `http.max_buffered_bytes` + this.
const RSS_ALLOWANCE_MIB: u64 = 24;

#[tokio::test]
async fn hundreds_of_stalled_uploads_stay_within_the_body_budget_and_valid_events_still_flow() {
    let dir = tempfile::tempdir().unwrap();
    // Defaults: max_body_bytes 1 MiB, http.max_buffered_bytes 32 MiB, 512 requests, 1024
    // connections. Errors only in the log: hundreds of 503s would fill the captured stderr pipe.
    let yaml_text =
        format!(
        "{}log:\n  level: error\n",
        yaml("sinks:\n  mem:\n    kind: discard\nroutes:\n  - match: \"*\"\n    to:\n      - { sink: mem, topic: t }\n")
    );
    let (served, idle_kib) = serve_warmed_up(dir.path(), &yaml_text).await;
    let addr = served.webhook_addr();
    let pid = served.child.id();
    // 300 uploads declaring 1,000,000 bytes each, sending 900,000 of them, then stalling:
    // without a budget the bridge would hold about 300 MB of bodies.
    let uploads: Vec<_> = (0..300)
        .map(|_| tokio::spawn(async move { stalled_upload(addr, 1_000_000, 900_000).await }))
        .collect();
    let mut held = Vec::new();
    for u in uploads {
        held.push(u.await.unwrap());
    }
    // Valid events keep flowing meanwhile: each takes room from the oldest stalled upload.
    let started = Instant::now();
    for i in 0..20 {
        let status = try_post(addr, event(&format!("evt_flow{i}"), "invoice.paid")).await;
        assert_eq!(status, Some(StatusCode::OK), "valid event {i} while uploads stall");
    }
    let took = started.elapsed();
    let peak_kib = vm_hwm_kib(pid);
    let bound_kib = idle_kib + 32 * 1024 + RSS_ALLOWANCE_MIB * 1024;
    eprintln!("idle RSS {idle_kib} KiB, peak RSS {peak_kib} KiB (bound {bound_kib} KiB); 20 valid events in {took:?}");
    assert!(
        peak_kib <= bound_kib,
        "peak RSS {peak_kib} KiB is over idle {idle_kib} KiB + 32 MiB + {RSS_ALLOWANCE_MIB} MiB"
    );
    assert!(took < Duration::from_secs(10), "valid events took {took:?}");
    drop(held);
    drop(served);
}

/// Opens a connection and sends `bytes` of a request head that never ends, keeping it open.
async fn stuffed_head(addr: std::net::SocketAddr, bytes: usize) -> Option<tokio::net::TcpStream> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let mut head = b"POST /webhooks/stripe HTTP/1.1\r\nhost: x\r\nx-pad: ".to_vec();
    head.resize(bytes, b'a');
    s.write_all(&head).await.ok()?;
    Some(s)
}

/// The README's per-connection term: a connection holding a request head just under hyper's
/// hard limit (twice `max_header_bytes`) costs at most four times `max_header_bytes`.
const PER_CONNECTION_KIB: u64 = 4 * 16;

#[tokio::test]
async fn a_full_house_of_stuffed_heads_and_stalled_uploads_stays_within_the_stated_bound() {
    let dir = tempfile::tempdir().unwrap();
    // Defaults (max_header_bytes 16 KiB, max_buffered_bytes 32 MiB, max_connections 1024), with
    // heads given 60 s so that every hostile connection is still held when the peak is taken.
    let yaml_text = format!(
        "{}http:\n  header_read_timeout: 60s\nlog:\n  level: error\n",
        yaml(ROUTE_ALL)
    );
    let (served, idle_kib) = serve_warmed_up(dir.path(), &yaml_text).await;
    let addr = served.webhook_addr();
    let pid = served.child.id();
    // 700 heads of 31,000 bytes (under the 32 KiB hard limit, so none is answered 431) and 300
    // uploads stalled after 900 KB: 1,000 of the 1,024 connections, each holding what it can.
    let heads: Vec<_> = (0..700)
        .map(|_| tokio::spawn(async move { stuffed_head(addr, 31_000).await }))
        .collect();
    let uploads: Vec<_> = (0..300)
        .map(|_| tokio::spawn(async move { stalled_upload(addr, 1_000_000, 900_000).await }))
        .collect();
    let mut held = Vec::new();
    for h in heads.into_iter().chain(uploads) {
        held.push(h.await.unwrap().expect("connection opened"));
    }
    // Let the bridge read what was sent before taking the peak.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for i in 0..10 {
        let status = try_post(addr, event(&format!("evt_house{i}"), "invoice.paid")).await;
        assert_eq!(
            status,
            Some(StatusCode::OK),
            "valid event {i} beside 1,000 hostile connections"
        );
    }
    let peak_kib = vm_hwm_kib(pid);
    let grown_kib = peak_kib.saturating_sub(idle_kib);
    let bound_kib = idle_kib + 32 * 1024 + 1024 * PER_CONNECTION_KIB;
    eprintln!("idle RSS {idle_kib} KiB, peak RSS {peak_kib} KiB, grown {grown_kib} KiB (bound {bound_kib} KiB)");
    assert!(
        peak_kib <= bound_kib,
        "peak RSS {peak_kib} KiB is over idle {idle_kib} KiB + 32 MiB + 1,024 × {PER_CONNECTION_KIB} KiB"
    );
    // The heads were really held: the large uploads alone may hold only three quarters of the
    // budget (24 MiB), and each head at least 16 KiB.
    assert!(
        grown_kib > 24 * 1024 + 700 * 16,
        "only {grown_kib} KiB grown: the heads were not held"
    );
    drop(held);
    drop(served);
}

fn openssl_cert(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            &format!("/CN={name}"),
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is installed");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

/// Posts over TLS trusting only `ca`; returns the status and the server certificate's DER.
async fn tls_post(addr: std::net::SocketAddr, trusted: &[&Path], body: Bytes) -> (StatusCode, Vec<u8>) {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for ca in trusted {
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let server_cert = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let sig = sign(SECRET, &body);
    let req = http::Request::post(PATH)
        .header("host", "localhost")
        .header("stripe-signature", sig)
        .body(http_body_util::Full::new(body))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    (resp.status(), server_cert)
}

#[tokio::test]
async fn tls_serves_with_a_certificate_and_picks_up_a_renewed_one() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_a, key_a) = openssl_cert(dir.path(), "a");
    let (cert_b, key_b) = openssl_cert(dir.path(), "b");
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::copy(&cert_a, &cert).unwrap();
    std::fs::copy(&key_a, &key).unwrap();
    let yaml = format!(
        "{}http:\n  tls:\n    cert_file: {}\n    key_file: {}\n",
        yaml(ROUTE_ALL),
        cert.display(),
        key.display()
    );
    let bridge = spawn_with(&yaml, vec![Arc::new(MemorySink::new("mem")) as Arc<dyn Sink>]).await;
    let (status, served) = tls_post(bridge.webhook_addr, &[&cert_a], event("evt_tls", "invoice.paid")).await;
    assert_eq!(status, StatusCode::OK);
    // Plain HTTP on the TLS port does not get a webhook through.
    let mut plain = tokio::net::TcpStream::connect(bridge.webhook_addr).await.unwrap();
    plain
        .write_all(b"POST /webhooks/stripe HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), plain.read_to_end(&mut out)).await;
    assert!(!String::from_utf8_lossy(&out).contains("200 OK"));

    // Renewal: new files, same paths; new connections get the new certificate.
    std::fs::copy(&key_b, &key).unwrap();
    std::fs::copy(&cert_b, &cert).unwrap();
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, now_served) = tls_post(
            bridge.webhook_addr,
            &[&cert_a, &cert_b],
            event("evt_tls2", "invoice.paid"),
        )
        .await;
        if now_served != served {
            assert_eq!(status, StatusCode::OK);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "the renewed certificate was not picked up"
        );
    }
    bridge.shutdown().await;
}

/// Whether the bridge closes a fresh connection on which nothing was sent, without answering.
async fn closed_unanswered(addr: std::net::SocketAddr) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return true;
    };
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(n)) => panic!("the bridge answered: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_request_from_outside_the_allow_list_is_refused() {
    let yaml_closed = format!("{}http:\n  allow_networks: [\"192.0.2.0/24\"]\n", yaml(ROUTE_ALL));
    let mem = MemorySink::new("mem");
    let bridge = spawn_with(&yaml_closed, vec![Arc::new(mem.clone()) as Arc<dyn Sink>]).await;
    // Closed at accept, before a byte of a request is read: no head to parse, nothing buffered.
    assert!(
        closed_unanswered(bridge.webhook_addr).await,
        "the connection was kept open"
    );
    let metrics = String::from_utf8_lossy(&get(bridge.admin_addr, "/metrics").await.body).to_string();
    assert_eq!(
        metric(
            &metrics,
            "hookbridge_connections_refused_total{reason=\"allow_networks\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(mem.records().is_empty());
    bridge.shutdown().await;

    // Behind a trusted proxy (here: loopback), the header decides.
    let yaml_proxy = format!(
        "{}http:\n  allow_networks: [\"192.0.2.0/24\"]\n  client_ip_header: X-Forwarded-For\n  trusted_proxies: [\"127.0.0.1\"]\n",
        yaml(ROUTE_ALL)
    );
    let bridge = spawn_with(&yaml_proxy, vec![Arc::new(mem.clone()) as Arc<dyn Sink>]).await;
    for (xff, want) in [
        ("192.0.2.7", StatusCode::OK),
        ("198.51.100.1", StatusCode::FORBIDDEN),
        ("192.0.2.7, 198.51.100.1", StatusCode::FORBIDDEN),
    ] {
        let body = event(&format!("evt_px{}", xff.len()), "invoice.paid");
        let sig = sign(SECRET, &body);
        let a = request(
            bridge.webhook_addr,
            Method::POST,
            PATH,
            &[("stripe-signature", &sig), ("x-forwarded-for", xff)],
            body,
        )
        .await;
        assert_eq!(a.status, want, "{xff}");
    }
    bridge.shutdown().await;
}

#[tokio::test]
async fn connections_over_max_connections_are_closed_at_accept() {
    let yaml = format!("{}http:\n  max_connections: 3\n", yaml(ROUTE_ALL));
    let bridge = spawn_with(&yaml, vec![Arc::new(MemorySink::new("mem")) as Arc<dyn Sink>]).await;
    let addr = bridge.webhook_addr;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(closed_unanswered(addr).await, "a fourth connection was served");
    // One closes: there is room again.
    drop(idle.pop());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(post_with(addr, SECRET, "evt_room").await, StatusCode::OK);
    let metrics = String::from_utf8_lossy(&get(bridge.admin_addr, "/metrics").await.body).to_string();
    assert_eq!(
        metric(
            &metrics,
            "hookbridge_connections_refused_total{reason=\"max_connections\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "hookbridge_open_connections"), Some(2.0), "{metrics}");
    drop(idle);
    bridge.shutdown().await;
}

#[tokio::test]
async fn sighup_or_a_changed_file_applies_a_valid_config_and_a_broken_one_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let yaml_for = |topic: &str| {
        yaml(&format!(
            "sinks:\n  local:\n    kind: file\n    path: {}\nroutes:\n  - match: \"*\"\n    to:\n      - {{ sink: local, topic: \"{topic}\" }}\n",
            out.display()
        ))
    };
    let mut served = serve_binary(dir.path(), &yaml_for("first"));
    let addr = served.webhook_addr();
    let cfg = served.config.clone();
    let hup = |pid: u32| {
        assert!(Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
            .success())
    };

    assert_eq!(
        post_signed(addr, event("evt_h1", "invoice.paid")).await.status,
        StatusCode::OK
    );
    // A broken config: the bridge keeps serving with the old one.
    std::fs::write(
        &cfg,
        served.with_ports(&yaml_for("second").replace("kind: file", "kind: nonsense")),
    )
    .unwrap();
    hup(served.child.id());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        post_signed(addr, event("evt_h2", "invoice.paid")).await.status,
        StatusCode::OK
    );
    // A valid one: the new route applies without a restart.
    std::fs::write(&cfg, served.with_ports(&yaml_for("second"))).unwrap();
    hup(served.child.id());
    let started = Instant::now();
    let mut i = 3;
    loop {
        assert_eq!(
            post_signed(addr, event(&format!("evt_h{i}"), "invoice.paid"))
                .await
                .status,
            StatusCode::OK
        );
        let text = std::fs::read_to_string(&out).unwrap();
        if text.lines().last().unwrap().contains("\"destination\":\"second\"") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the reload never applied:\n{text}"
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let text = std::fs::read_to_string(&out).unwrap();
    let destinations: Vec<_> = text.lines().map(|l| l.contains("\"destination\":\"first\"")).collect();
    assert!(destinations[0] && destinations[1], "{text}");

    // No signal at all: a changed file is picked up by itself (a ConfigMap updated in place).
    std::fs::write(&cfg, served.with_ports(&yaml_for("third"))).unwrap();
    let started = Instant::now();
    loop {
        i += 1;
        let status = post_signed(addr, event(&format!("evt_h{i}"), "invoice.paid"))
            .await
            .status;
        assert_eq!(status, StatusCode::OK);
        let text = std::fs::read_to_string(&out).unwrap();
        if text.lines().last().unwrap().contains("\"destination\":\"third\"") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "the changed file was never applied"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(Command::new("kill")
        .args(["-TERM", &served.child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = served.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut served.child.stderr.take().unwrap(), &mut logs).unwrap();
    assert!(logs.contains("config reload refused"), "{logs}");
    let reloads: Vec<_> = logs.lines().filter(|l| l.contains("config reloaded")).collect();
    assert!(reloads.iter().any(|l| l.contains("SIGHUP")), "{logs}");
    assert!(reloads.iter().any(|l| l.contains("file change")), "{logs}");
}

/// A write that fails half-way (here: the file size limit) must not leave a partial record that
/// a later, acknowledged record is glued to.
#[tokio::test]
async fn a_failed_file_write_leaves_only_whole_records() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let cfg = dir.path().join("c.yaml");
    let (webhook, admin) = (free_port(), free_port());
    let text = yaml(&format!(
        "sinks:\n  local:\n    kind: file\n    path: {}\nroutes:\n  - match: \"*\"\n    to:\n      - {{ sink: local, topic: t }}\n",
        out.display()
    ))
    .replace("admin_listen: \"127.0.0.1:0\"", &format!("admin_listen: \"127.0.0.1:{admin}\""))
    .replacen("listen: \"127.0.0.1:0\"", &format!("listen: \"127.0.0.1:{webhook}\""), 1);
    std::fs::write(&cfg, text).unwrap();
    // A 16 KiB file size limit (ulimit -f counts 1024-byte blocks in bash); SIGXFSZ ignored so
    // the write fails with EFBIG instead of killing the process.
    let script = format!(
        "trap '' XFSZ; ulimit -f 16; exec {} serve --config {}",
        bin(),
        cfg.display()
    );
    let child = Command::new("bash")
        .args(["-c", &script])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut served = Served {
        child,
        webhook,
        admin,
        config: cfg,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", admin)).is_err() {
        assert!(Instant::now() < deadline, "the bridge did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let addr = served.webhook_addr();
    let pad = "x".repeat(3000);
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for i in 0..12 {
        let id = format!("evt_big{i}");
        let body = Bytes::from(format!(r#"{{"id":"{id}","type":"invoice.paid","pad":"{pad}"}}"#));
        match post_signed(addr, body).await.status {
            StatusCode::OK => acknowledged.push(id),
            StatusCode::SERVICE_UNAVAILABLE => refused += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert!(refused > 0, "the size limit was never reached");
    // A small event that would fit in what is left of the limit.
    let small = event("evt_small", "invoice.paid");
    if post_signed(addr, small).await.status == StatusCode::OK {
        acknowledged.push("evt_small".into());
    }
    let _ = served.child.kill();
    let _ = served.child.wait();
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the file ends in a partial record"
    );
    let ids: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("broken record ({e}): {l:.80}"));
            v["headers"]["stripe-event-id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        ids, acknowledged,
        "every acknowledged event, and only those, is in the file"
    );
}

/// Config with one file sink `local` writing to `path`, every event routed to it.
fn file_sink_yaml(path: &Path) -> String {
    yaml(&format!(
        "sinks:\n  local:\n    kind: file\n    path: {}\nroutes:\n  - match: \"*\"\n    to:\n      - {{ sink: local, topic: t }}\n",
        path.display()
    ))
}

#[tokio::test]
async fn a_reload_rebuilds_a_changed_sink_and_closes_the_old_one_later() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.jsonl");
    let second = dir.path().join("second.jsonl");
    let yaml_for = file_sink_yaml;
    let bridge = spawn(&yaml_for(&first)).await;
    assert_eq!(
        post_signed(bridge.webhook_addr, event("evt_r1", "invoice.paid"))
            .await
            .status,
        StatusCode::OK
    );
    let old_sink = bridge.state.live().sinks[0].clone();

    // The same sink name with another path: a new sink, used at once.
    bridge.state.reload(settings(&yaml_for(&second))).await.unwrap();
    assert_eq!(
        post_signed(bridge.webhook_addr, event("evt_r2", "invoice.paid"))
            .await
            .status,
        StatusCode::OK
    );
    assert!(std::fs::read_to_string(&first).unwrap().contains("evt_r1"));
    assert!(std::fs::read_to_string(&second).unwrap().contains("evt_r2"));
    // No request that started before the reload is left: the replaced sink is closed soon.
    // (One that is still running keeps it open: see the test after this one.)
    let started = Instant::now();
    while old_sink.health().await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "the replaced sink was never closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A changed kind under the same name is a new sink too, not the old one under a new label.
    let discard = yaml(
        "sinks:\n  local:\n    kind: discard\nroutes:\n  - match: \"*\"\n    to:\n      - { sink: local, topic: t }\n",
    );
    bridge.state.reload(settings(&discard)).await.unwrap();
    assert_eq!(bridge.state.live().sinks[0].kind(), "discard");
    assert_eq!(
        post_signed(bridge.webhook_addr, event("evt_r3", "invoice.paid"))
            .await
            .status,
        StatusCode::OK
    );
    assert!(!std::fs::read_to_string(&second).unwrap().contains("evt_r3"));
    bridge.shutdown().await;
}

#[tokio::test]
async fn a_reload_whose_new_sink_never_gets_healthy_is_refused() {
    let bridge = spawn(&yaml(ROUTE_ALL)).await;
    // A Kafka sink pointing at a closed port: built, never healthy.
    let broken = yaml(
        "sinks:\n  mem:\n    kind: discard\n  k:\n    kind: kafka\n    brokers: \"127.0.0.1:1\"\nroutes:\n  - match: \"*\"\n    to:\n      - { sink: k, topic: t }\n",
    );
    let started = Instant::now();
    let err = bridge.state.reload(settings(&broken)).await.unwrap_err();
    assert!(err.to_string().contains("sink k"), "{err}");
    assert!(started.elapsed() < hookbridge::app::RELOAD_SINK_WAIT + Duration::from_secs(3));
    // The running config is kept: events still go to the discard sink.
    assert_eq!(bridge.state.live().sinks.len(), 1);
    assert_eq!(
        post_signed(bridge.webhook_addr, event("evt_keep", "invoice.paid"))
            .await
            .status,
        StatusCode::OK
    );
    bridge.shutdown().await;
}

#[test]
fn a_certificate_with_the_wrong_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_a, key_a) = openssl_cert(dir.path(), "a");
    let (_cert_b, key_b) = openssl_cert(dir.path(), "b");
    assert!(hookbridge::tls::load_certified_key(&cert_a, &key_a).is_ok());
    let err = hookbridge::tls::load_certified_key(&cert_a, &key_b).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
}

/// A signed request whose body is sent in two halves: the head and the first half now; the
/// second half when `rest` is sent. Resolves to the raw answer (empty if the connection was
/// closed without one), read from the moment the head is sent.
async fn two_part_request(
    addr: std::net::SocketAddr,
    body: Bytes,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<String>) {
    let sig = sign(SECRET, &body);
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = s.into_split();
    let head = format!(
        "POST {PATH} HTTP/1.1\r\nhost: x\r\nstripe-signature: {sig}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    write.write_all(head.as_bytes()).await.unwrap();
    let half = body.len() / 2;
    write.write_all(&body[..half]).await.unwrap();
    let (rest, go) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        if go.await.is_ok() {
            let _ = write.write_all(&body[half..]).await;
        }
        // Keep the write side open until the answer was read.
        tokio::time::sleep(Duration::from_secs(10)).await;
    });
    let answer = tokio::spawn(async move {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        // The answer is complete once its body (a small JSON object) is in.
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(15), read.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&out);
            if text.contains("\r\n\r\n") && text.trim_end().ends_with('}') {
                break;
            }
        }
        String::from_utf8_lossy(&out).to_string()
    });
    (rest, answer)
}

#[tokio::test]
async fn a_reload_that_replaces_a_sink_does_not_break_a_request_still_sending_its_body() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first.jsonl");
    let second = dir.path().join("second.jsonl");
    let yaml_for = file_sink_yaml;
    let bridge = spawn(&yaml_for(&first)).await;
    let old_sink = bridge.state.live().sinks[0].clone();
    let (rest, answer) = two_part_request(bridge.webhook_addr, event("evt_slow_body", "invoice.paid")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    bridge.state.reload(settings(&yaml_for(&second))).await.unwrap();
    // Longer than ack_timeout (2 s) + 1 s, after which the replaced sink used to be closed.
    tokio::time::sleep(Duration::from_millis(4000)).await;
    assert!(
        old_sink.health().await.is_ok(),
        "the replaced sink was closed while a request that started before the reload still needs it"
    );
    rest.send(()).unwrap();
    let text = answer.await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(std::fs::read_to_string(&first).unwrap().contains("evt_slow_body"));
    // Once that request is answered, the replaced sink is closed.
    let started = Instant::now();
    while old_sink.health().await.is_ok() {
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "the replaced sink was never closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bridge.shutdown().await;
}

#[tokio::test]
async fn at_shutdown_every_request_whose_body_was_read_is_answered() {
    // ack_timeout is 2 s: the drain ends at 2.5 s; each publish takes 1.9 s.
    let mem = MemorySink::new("mem");
    mem.set_behaviour(Behaviour::Delay(Duration::from_millis(1900)));
    let bridge = spawn_with(&yaml(ROUTE_ALL), vec![Arc::new(mem.clone()) as Arc<dyn Sink>]).await;
    let addr = bridge.webhook_addr;
    // An idle keep-alive connection that already served a request.
    let target = hookbridge::client::Target::parse(&format!("http://{addr}{PATH}")).unwrap();
    let mut idle = hookbridge::client::Connection::open(&target).await.unwrap();
    mem.set_behaviour(Behaviour::Confirm);
    let body = event("evt_ka_before", "invoice.paid");
    let (status, _) = idle.post_signed(&sign(SECRET, &body), body).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    mem.set_behaviour(Behaviour::Delay(Duration::from_millis(1900)));

    // Body read, being published when shutdown begins.
    let publishing = tokio::spawn(async move { try_post(addr, event("evt_sd_publishing", "invoice.paid")).await });
    // Body still arriving when shutdown begins; the rest comes 1 s later.
    let (rest, slow) = two_part_request(addr, event("evt_sd_slow", "invoice.paid")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let began = Instant::now();
    bridge.trigger_shutdown();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let _ = rest.send(());
    // Once shutdown is complete (the binary exits then), every such request has its answer.
    bridge.wait().await;
    assert!(
        began.elapsed() < Duration::from_millis(3000),
        "shutdown took {:?}",
        began.elapsed()
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        publishing.is_finished() && slow.is_finished(),
        "a request was still unanswered when shutdown completed"
    );
    assert_eq!(
        publishing.await.unwrap(),
        Some(StatusCode::OK),
        "a request whose body was read is answered with its confirmation"
    );
    let text = slow.await.unwrap();
    assert!(
        text.starts_with("HTTP/1.1 503"),
        "a request still sending its body is answered 503, not cut off: {text:?}"
    );
    assert!(text.to_ascii_lowercase().contains("retry-after"), "{text}");
    assert!(text.to_ascii_lowercase().contains("connection: close"), "{text}");
    // The idle keep-alive connection was closed without an answer to anything: a client that
    // sent a request on it just then sees the connection closed, and may retry.
    assert!(!idle.is_open() || idle.post_signed("t=1,v1=00", Bytes::from_static(b"{}")).await.is_err());
    let ids: Vec<_> = mem
        .records()
        .iter()
        .filter_map(|r| {
            r.headers
                .iter()
                .find(|(k, _)| k == "stripe-event-id")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert_eq!(ids, ["evt_ka_before", "evt_sd_publishing"]);
}

#[tokio::test]
async fn a_reload_still_waiting_for_a_new_sink_gives_up_when_shutdown_begins() {
    let bridge = spawn(&yaml(ROUTE_ALL)).await;
    // A Kafka sink pointing at a closed port: built, never healthy (a reload waits 10 s for it).
    let broken = yaml(
        "sinks:\n  mem:\n    kind: discard\n  k:\n    kind: kafka\n    brokers: \"127.0.0.1:1\"\nroutes:\n  - match: \"*\"\n    to:\n      - { sink: k, topic: t }\n",
    );
    let state = bridge.state.clone();
    let reload = tokio::spawn(async move { state.reload(settings(&broken)).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let began = Instant::now();
    let state = bridge.state.clone();
    bridge.shutdown().await;
    assert!(
        began.elapsed() < Duration::from_secs(3),
        "shutdown took {:?}",
        began.elapsed()
    );
    let err = tokio::time::timeout(Duration::from_secs(3), reload)
        .await
        .expect("the reload kept waiting after shutdown began")
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("shutting down"), "{err}");
    assert_eq!(state.live().sinks.len(), 1, "nothing was swapped in");
    // And a reload asked for during shutdown is refused.
    assert!(state.reload(settings(&yaml(ROUTE_ALL))).await.is_err());
}
