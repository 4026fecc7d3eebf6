//! The command line: exit codes, one-line errors, sign, route, and `serve` as a real process
//! (SIGTERM drains requests in flight and exits 0).
#![allow(clippy::unwrap_used)]

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn hookbridge(args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .env_remove("HOOKBRIDGE_CONFIG")
        .output()
        .expect("run hookbridge")
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn write_config(dir: &tempfile::TempDir, yaml: &str) -> String {
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, yaml).unwrap();
    path.to_string_lossy().to_string()
}

#[test]
fn shipped_configs_are_valid() {
    let root = env!("CARGO_MANIFEST_DIR");
    for name in ["hookbridge.yaml", "quickstart.yaml"] {
        let o = hookbridge(&["check-config", "--config", &format!("{root}/config/{name}")]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert!(stdout(&o).contains("is valid"));
        assert!(
            !stdout(&o).contains("whsec_"),
            "secrets must be redacted: {}",
            stdout(&o)
        );
    }
}

#[test]
fn bad_config_exits_2_with_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        &yaml("sinks:\n  out:\n    kind: file\n    path: x\nroutes:\n  - match: \"*\"\n    to:\n      - { sink: nope, topic: t }\n"),
    );
    let o = hookbridge(&["check-config", "--config", &cfg]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("routes[0].to[0].sink"), "{err}");
    assert!(!err.contains(SECRET), "{err}");

    let cfg = write_config(
        &dir,
        &yaml("sinks:\n  out:\n    kind: file\n    path: x\n    colour: blue\nroutes: []\n"),
    );
    let o = hookbridge(&["serve", "--config", &cfg]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("colour"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"));

    let o = hookbridge(&["check-config", "--config", "/no/such/file.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("does not exist"));

    let o = hookbridge(&["check-config", "--config", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn garbage_yaml_is_a_config_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(&dir, "listen: [unclosed\n  : : :\n");
    let o = hookbridge(&["check-config", "--config", &cfg]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stderr(&o).trim_end().lines().count(), 1, "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"));
}

#[test]
fn config_path_comes_from_the_environment_when_not_given() {
    let root = env!("CARGO_MANIFEST_DIR");
    let o = Command::new(bin())
        .args(["route", "invoice.paid"])
        .env("HOOKBRIDGE_CONFIG", format!("{root}/config/quickstart.yaml"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("stdout") && stdout(&o).contains("stripe.invoice"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(hookbridge(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(hookbridge(&["sign"]).status.code(), Some(2));
    assert_eq!(hookbridge(&["send", "--url", "http://x"]).status.code(), Some(2));
    let o = hookbridge(&["send", "--url", "ftp://x", "--secret", "s", "/dev/null"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

#[test]
fn sign_matches_the_library_for_a_file_and_for_stdin() {
    let body = event("evt_sign", "invoice.paid");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("e.json");
    std::fs::write(&file, &body).unwrap();
    let expected = hookbridge::verify::sign(SECRET.as_bytes(), 1_700_000_000, &body);
    let o = hookbridge(&[
        "sign",
        "--secret",
        SECRET,
        "--timestamp",
        "1700000000",
        file.to_str().unwrap(),
    ]);
    assert_eq!(stdout(&o).trim_end(), expected);

    let mut child = Command::new(bin())
        .args(["sign", "--secret", SECRET, "--timestamp", "1700000000"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&body).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(stdout(&o).trim_end(), expected);
}

#[test]
fn route_prints_targets_or_drop() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        &dir,
        &yaml(
            "sinks:\n  a:\n    kind: discard\n  b:\n    kind: discard\nroutes:\n  - match: \"customer.subscription.*\"\n    to:\n      - { sink: a, topic: \"subs.{type}\" }\n      - { sink: b, topic: \"{object}.{livemode}\" }\n",
        ),
    );
    let o = hookbridge(&["route", "customer.subscription.updated", "--config", &cfg]);
    let out = stdout(&o);
    assert!(
        out.contains("sink a (discard) topic subs.customer.subscription.updated"),
        "{out}"
    );
    assert!(
        out.contains("sink b (discard) topic customer.subscription.test"),
        "{out}"
    );
    let o = hookbridge(&["route", "invoice.paid", "--config", &cfg]);
    assert!(stdout(&o).contains("dropped"), "{}", stdout(&o));
}

fn serve(dir: &tempfile::TempDir, sinks_and_routes: &str) -> Served {
    serve_binary(dir.path(), &yaml(sinks_and_routes))
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "did not exit within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn send_posts_files_to_a_served_file_sink_and_sigterm_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("events.jsonl");
    let mut bridge = serve(
        &dir,
        &format!(
            "sinks:\n  local:\n    kind: file\n    path: {}\nroutes:\n  - match: \"*\"\n    to:\n      - {{ sink: local, topic: \"stripe.{{object}}\" }}\n",
            out.display()
        ),
    );
    let body = event("evt_send", "invoice.paid");
    let file = dir.path().join("e.json");
    std::fs::write(&file, &body).unwrap();
    let url = format!("http://127.0.0.1:{}{PATH}", bridge.webhook);
    let o = hookbridge(&["send", "--url", &url, "--secret", SECRET, file.to_str().unwrap()]);
    assert!(o.status.success(), "{} {}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains(" 200 "), "{}", stdout(&o));
    // Wrong secret: send reports the 400 and exits 1.
    let o = hookbridge(&["send", "--url", &url, "--secret", "whsec_wrong", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains(" 400 "), "{}", stdout(&o));

    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let record: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(record["sink"], "local");
    assert_eq!(record["destination"], "stripe.invoice");
    assert_eq!(record["key"], "obj_evt_send");
    assert_eq!(record["headers"]["stripe-event-id"], "evt_send");
    assert_eq!(record["payload"].as_str().unwrap().as_bytes(), &body[..]);

    sigterm(&bridge.child);
    let status = wait_exit(&mut bridge.child, Duration::from_secs(4));
    assert_eq!(status.code(), Some(0));
    let mut logs = String::new();
    BufReader::new(bridge.child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .for_each(|l| logs.push_str(&l));
    assert!(
        !logs.contains(SECRET) && !logs.contains("\"payload\""),
        "logs leak: {logs}"
    );
}

#[test]
fn sigterm_lets_a_request_in_flight_finish() {
    let dir = tempfile::tempdir().unwrap();
    // A sink that takes 1.5 s to confirm: the request is still in flight when SIGTERM arrives.
    let mut bridge = serve(
        &dir,
        "sinks:\n  slow:\n    kind: discard\n    delay: 1500ms\nroutes:\n  - match: \"*\"\n    to:\n      - { sink: slow, topic: t }\n",
    );
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", bridge.webhook).parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let in_flight = rt.spawn(async move { post_signed(addr, event("evt_term", "invoice.paid")).await });
    std::thread::sleep(Duration::from_millis(400));
    let sent_at = Instant::now();
    sigterm(&bridge.child);
    let answer = rt.block_on(in_flight).unwrap();
    assert_eq!(answer.status, http::StatusCode::OK, "{:?}", answer.body);
    let status = wait_exit(&mut bridge.child, Duration::from_secs(4));
    assert_eq!(status.code(), Some(0));
    // ack_timeout is 2 s in these configs: the whole drain must fit in ack_timeout + 1 s.
    assert!(sent_at.elapsed() < Duration::from_secs(3), "{:?}", sent_at.elapsed());
}
