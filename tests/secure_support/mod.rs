//! Helpers for the tests against the secured listeners of the local brokers: the test
//! certificates of `deploy/local/certs.sh`, the test users that `deploy/local/kafka.sh`,
//! `deploy/local/rabbitmq.sh` and `deploy/local/nats.sh` create, credential files that a test rewrites, and the check that
//! no secret reached a log line or an answer.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The SCRAM-SHA-256/512 test user of kafka.sh (same values as there).
pub const KAFKA_SCRAM_USER: &str = "hookbridge";
pub const KAFKA_SCRAM_PASSWORD: &str = "hb-scram-secret-4d1c";
/// The PLAIN test user of kafka.sh.
pub const KAFKA_PLAIN_USER: &str = "hookbridge";
pub const KAFKA_PLAIN_PASSWORD: &str = "hb-plain-secret-9e27";
/// The password test user of rabbitmq.sh, and the user named by the client certificate's CN.
pub const AMQP_USER: &str = "hookbridge";
pub const AMQP_PASSWORD: &str = "hb-amqp-secret-71b0";
pub const AMQP_CERT_USER: &str = "hookbridge-client";
/// The test logins of nats.sh: a user and password, an NKey (the seed of its public key
/// UBEGKYBO…), and the token of the TLS listener.
pub const NATS_USER: &str = "hookbridge";
pub const NATS_PASSWORD: &str = "hb-nats-secret-3d7a";
pub const NATS_NKEY_SEED: &str = "SUAML2SIGHPLEM6WOKU6IUPTPTYVXR2LO6PGBWP753U6VHZEREDF5NQZXY";
pub const NATS_TOKEN: &str = "hb-nats-token-8c21";

/// The directory of the test certificates, made (or checked) by `deploy/local/certs.sh`, the
/// same directory the brokers use.
pub fn certs() -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/local/certs.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "certs.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Copies the test certificate file `name` (e.g. `client.pem`) to `to`, replacing it the way a
/// mounted secret is replaced: written beside, then renamed over.
pub fn install(name: &str, to: &Path) {
    let bytes = std::fs::read(certs().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    replace(to, &bytes);
}

/// Writes `bytes` to `to` atomically (a temporary file renamed over it).
pub fn replace(to: &Path, bytes: &[u8]) {
    let tmp = to.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// An answer's body as text.
pub fn text(answer: &crate::common::Answer) -> String {
    String::from_utf8_lossy(&answer.body).into_owned()
}

/// Panics if any of `secrets` occurs in `text`, naming where.
pub fn assert_no_secret(what: &str, text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!text.contains(s), "{what} contains the secret {s:?}:\n{text}");
    }
}

/// Runs `hookbridge check-config` on `config_text` (written into `dir`), requires it to pass, and
/// panics if its output shows any of `secrets`.
pub fn check_config_shows_no_secret(dir: &Path, config_text: &str, secrets: &[&str]) {
    let path = dir.join("check.yaml");
    std::fs::write(&path, config_text).unwrap();
    let check = std::process::Command::new(crate::common::bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(check.status.success(), "{printed}");
    assert_no_secret("check-config output", &printed, secrets);
}

/// `hookbridge_sink_up{sink="NAME"}` as `/metrics` shows it now.
pub async fn sink_up(admin: std::net::SocketAddr, sink: &str) -> Option<f64> {
    let text = text(&crate::common::get(admin, "/metrics").await);
    crate::common::metric(&text, &format!("hookbridge_sink_up{{sink=\"{sink}\"}}"))
}

/// Posts `body` signed now, and returns the answer and how long it took.
pub async fn timed_post(addr: std::net::SocketAddr, body: bytes::Bytes) -> (crate::common::Answer, Duration) {
    let start = Instant::now();
    let answer = crate::common::post_signed(addr, body).await;
    (answer, start.elapsed())
}

/// What a failed secured connection must look like from outside: the publish answers 503 within
/// `ack_timeout` (2 s in the test configs, plus a margin for a loaded machine), `/readyz` answers
/// 503 naming `cause`, and `hookbridge_sink_up` is 0. Returns the readiness body.
pub async fn assert_unavailable(
    bridge: &hookbridge::app::Running,
    sink: &str,
    body: bytes::Bytes,
    cause: &str,
) -> String {
    let (answer, took) = timed_post(bridge.webhook_addr, body).await;
    assert_eq!(answer.status.as_u16(), 503, "{}", text(&answer));
    assert!(took < Duration::from_millis(3500), "the 503 took {took:?}");
    // The client reports the cause on its first failed attempt; give it a few tries.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let ready = crate::common::get(bridge.admin_addr, "/readyz").await;
        let body = text(&ready);
        assert_eq!(ready.status.as_u16(), 503, "{body}");
        if body.contains(cause) {
            assert_eq!(sink_up(bridge.admin_addr, sink).await, Some(0.0));
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz does not name the cause {cause:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits until `/readyz` answers 200 (a fixed credential file was picked up), within `within`.
pub async fn wait_ready(admin: std::net::SocketAddr, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let ready = crate::common::get(admin, "/readyz").await;
        if ready.status.as_u16() == 200 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "not ready {within:?} after the fix: {}",
            text(&ready)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Takes the bridge's stderr and reads it on a thread until the process ends.
pub fn read_log(served: &mut crate::common::Served) -> std::thread::JoinHandle<String> {
    let mut stderr = served.child.stderr.take().expect("stderr is piped");
    std::thread::spawn(move || {
        let mut logs = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut logs);
        logs
    })
}

/// base64url without padding, as JWTs use.
pub fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}
