//! The rabbitmq sink over AMQPS (`deploy/local/rabbitmq.sh`: TLS on 127.0.0.1:5671 with the test
//! CA of `deploy/local/certs.sh`, EXTERNAL login by client certificate): a password login and a
//! certificate login both publish, and the message reads back byte for byte; an untrusted broker,
//! a wrong password or a refused client certificate answer 503, say why in `/readyz`, and recover
//! without a restart once the file is fixed; no password reaches a log, an answer or
//! `check-config`. These tests fail, never skip, when the broker is missing.
#![allow(clippy::unwrap_used)]

use crate::amqp_support;
use crate::common;
use crate::secure_support;

use std::path::Path;
use std::time::Duration;

use amqp_support::{channel, drain, message_id, one_queue, unique, ROUTE_BY_TYPE};
use common::*;
use secure_support::*;

/// A fixed file is noticed within 2 s (the file poll), then the new sink must be healthy.
const RECOVERY: Duration = Duration::from_secs(25);

/// A config with one rabbitmq sink `amqp` at `url` (its extra keys in `extra`, indented by 4),
/// declaring `queue` bound to every event.
fn config(url: &str, extra: &str, exchange: &str, queue: &str) -> String {
    yaml(&format!(
        "sinks:\n  amqp:\n    kind: rabbitmq\n    url: \"{url}\"\n    exchange: \"{exchange}\"\n    \
         reconnect_max_delay: 500ms\n{extra}{}{ROUTE_BY_TYPE}",
        one_queue(queue, &["#"])
    ))
}

/// `tls:` with the given files.
fn tls(ca_file: &Path, client: Option<(&Path, &Path)>) -> String {
    let mut out = format!("    tls:\n      ca_file: \"{}\"\n", ca_file.display());
    if let Some((cert, key)) = client {
        out.push_str(&format!(
            "      cert_file: \"{}\"\n      key_file: \"{}\"\n",
            cert.display(),
            key.display()
        ));
    }
    out
}

fn password_file(path: &Path) -> String {
    format!("    password: {{ file: \"{}\" }}\n", path.display())
}

/// The URL of the password user over TLS.
fn password_url() -> String {
    format!("amqps://{AMQP_USER}@127.0.0.1:5671/%2f")
}

/// The URL of a certificate login (EXTERNAL): no user, no password.
const EXTERNAL_URL: &str = "amqps://127.0.0.1:5671/%2f?auth_mechanism=external";

/// Posts a fresh event (200) and finds exactly it, byte for byte, in `queue`.
async fn assert_published(bridge: &hookbridge::app::Running, queue: &str) {
    let id = unique("evt_tls");
    let body = event(&id, "invoice.paid");
    let answer = post_signed(bridge.webhook_addr, body.clone()).await;
    assert_eq!(answer.status, 200, "{}", text(&answer));
    let (_conn, ch) = channel().await;
    let got = drain(&ch, queue).await;
    assert_eq!(got.len(), 1, "exactly the one message in {queue}");
    assert_eq!(message_id(&got[0]), id);
    assert_eq!(got[0].delivery.data, body.to_vec(), "byte for byte");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_password_verified_against_the_configured_ca() {
    let (certs, dir) = (certs(), tempfile::tempdir().unwrap());
    let pw = dir.path().join("pw");
    std::fs::write(&pw, AMQP_PASSWORD).unwrap();
    let (exchange, queue) = (unique("tls_ex"), unique("tls_q"));
    let extra = password_file(&pw) + &tls(&certs.join("ca.pem"), None);
    let bridge = spawn(&config(&password_url(), &extra, &exchange, &queue)).await;
    wait_ready(bridge.admin_addr, Duration::from_secs(15)).await;
    assert_published(&bridge, &queue).await;
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_client_certificate_external_login() {
    let certs = certs();
    let (exchange, queue) = (unique("ext_ex"), unique("ext_q"));
    let extra = tls(
        &certs.join("ca.pem"),
        Some((&certs.join("client.pem"), &certs.join("client.key"))),
    );
    let bridge = spawn(&config(EXTERNAL_URL, &extra, &exchange, &queue)).await;
    wait_ready(bridge.admin_addr, Duration::from_secs(15)).await;
    assert_published(&bridge, &queue).await;
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_broker_certificate_is_503_named_in_readyz_and_fixing_the_ca_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let (pw, ca_file) = (dir.path().join("pw"), dir.path().join("ca.pem"));
    std::fs::write(&pw, AMQP_PASSWORD).unwrap();
    install("other-ca.pem", &ca_file);
    let (exchange, queue) = (unique("untrusted_ex"), unique("untrusted_q"));
    let extra = password_file(&pw) + &tls(&ca_file, None);
    let bridge = spawn(&config(&password_url(), &extra, &exchange, &queue)).await;
    assert_unavailable(
        &bridge,
        "amqp",
        event(&unique("evt"), "invoice.paid"),
        "certificate not trusted",
    )
    .await;

    install("ca.pem", &ca_file);
    wait_ready(bridge.admin_addr, RECOVERY).await;
    assert_eq!(sink_up(bridge.admin_addr, "amqp").await, Some(1.0));
    assert_published(&bridge, &queue).await;
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_503_named_in_readyz_and_fixing_the_file_recovers() {
    let (certs, dir) = (certs(), tempfile::tempdir().unwrap());
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "hb-wrong-amqp-secret-0c3e").unwrap();
    let (exchange, queue) = (unique("wrongpw_ex"), unique("wrongpw_q"));
    let extra = password_file(&pw) + &tls(&certs.join("ca.pem"), None);
    let bridge = spawn(&config(&password_url(), &extra, &exchange, &queue)).await;
    assert_unavailable(
        &bridge,
        "amqp",
        event(&unique("evt"), "invoice.paid"),
        "authentication failed",
    )
    .await;

    replace(&pw, AMQP_PASSWORD.as_bytes());
    wait_ready(bridge.admin_addr, RECOVERY).await;
    assert_published(&bridge, &queue).await;
    bridge.shutdown().await;
}

/// EXTERNAL login with a certificate the broker refuses (`bad`), then the good one.
async fn refused_client_certificate_recovers(bad: &str) {
    let (certs, dir) = (certs(), tempfile::tempdir().unwrap());
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    install(&format!("{bad}.pem"), &cert);
    install(&format!("{bad}.key"), &key);
    let (exchange, queue) = (unique("badcert_ex"), unique("badcert_q"));
    let extra = tls(&certs.join("ca.pem"), Some((&cert, &key)));
    let bridge = spawn(&config(EXTERNAL_URL, &extra, &exchange, &queue)).await;
    assert_unavailable(
        &bridge,
        "amqp",
        event(&unique("evt"), "invoice.paid"),
        "client certificate refused by the broker",
    )
    .await;

    install("client.key", &key);
    install("client.pem", &cert);
    wait_ready(bridge.admin_addr, RECOVERY).await;
    assert_published(&bridge, &queue).await;
    bridge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_another_ca_is_503_named_in_readyz_and_replacing_it_recovers() {
    refused_client_certificate_recovers("client-other-ca").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_client_certificate_is_503_named_in_readyz_and_renewing_it_recovers() {
    refused_client_certificate_recovers("client-expired").await;
}

/// The AMQP password appears in no log line (at debug level), no answer and no `check-config`
/// output, whether it is wrong or right.
#[test]
fn no_password_appears_in_logs_answers_or_check_config() {
    let (certs, dir) = (certs(), tempfile::tempdir().unwrap());
    let wrong = "hb-wrong-amqp-secret-77aa";
    let pw = dir.path().join("pw");
    std::fs::write(&pw, wrong).unwrap();
    let (exchange, queue) = (unique("nosecret_ex"), unique("nosecret_q"));
    let extra = password_file(&pw) + &tls(&certs.join("ca.pem"), None);
    let text_config = config(&password_url(), &extra, &exchange, &queue) + "\nlog:\n  level: debug\n";
    let secrets = [wrong, AMQP_PASSWORD, SECRET];

    check_config_shows_no_secret(dir.path(), &text_config, &secrets);

    let mut served = serve_binary(dir.path(), &text_config);
    // Read the log while it is written: a full pipe would block the bridge.
    let log_reader = read_log(&mut served);
    let admin = std::net::SocketAddr::from(([127, 0, 0, 1], served.admin));
    let mut answers = String::new();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let (answer, _) = timed_post(served.webhook_addr(), event(&unique("evt"), "invoice.paid")).await;
        assert_eq!(answer.status.as_u16(), 503, "{}", text(&answer));
        answers.push_str(&text(&answer));
        answers.push_str(&text(&get(admin, "/readyz").await));
        replace(&pw, AMQP_PASSWORD.as_bytes());
        wait_ready(admin, RECOVERY).await;
        let (answer, _) = timed_post(served.webhook_addr(), event(&unique("evt"), "invoice.paid")).await;
        assert_eq!(answer.status.as_u16(), 200, "{}", text(&answer));
    });
    served.child.kill().unwrap();
    let logs = log_reader.join().unwrap();
    assert!(logs.contains("credential files changed"), "{logs}");
    assert_no_secret("the bridge's log", &logs, &secrets);
    assert_no_secret("the answers", &answers, &secrets);
}
